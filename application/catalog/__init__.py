"""Catalog sources: where pending products (id, image_url, brand) come from, in id order."""

from application.catalog.base import Catalog, Product, ProductId

__all__ = ["Catalog", "Product", "ProductId"]
