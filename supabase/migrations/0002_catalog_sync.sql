-- Catalog sync: soft deletes and a keyset index on (updated_at, id) (issue 14).
--
-- Apply it after 0001 (Dashboard -> SQL Editor, or `supabase db push`). Re-running it is
-- harmless: every statement is idempotent.
--
-- What a nightly build does with it (application/sync.py): it reads the rows changed since the
-- store's sync position, in (updated_at, id) order, a page at a time:
--   where updated_at = W and id > A order by id limit n, then
--   where updated_at > W order by updated_at, id limit n
-- Both are range scans of the index below, so "rows changed since W" costs the changed rows,
-- not the table. A changed row is re-embedded (its old vector stops being live); a row whose
-- deleted_at is set stops being live. The 0001 trigger sets updated_at on every update, so
-- setting deleted_at (or changing image_url) makes the row "changed"; inserts get now().
--
-- Soft delete a product:   update public.product_images set deleted_at = now() where id = ...;
-- Hard deletes (the row is gone) are found by `faiss-builder build --reconcile`, which reads
-- the id column alone (keyset) and compares it with the store's live ids.

alter table public.product_images add column if not exists deleted_at timestamptz;

create index if not exists product_images_updated_at_id
    on public.product_images (updated_at, id);

comment on column public.product_images.deleted_at is
    'Soft delete: set it (the trigger bumps updated_at) and the next build drops the product.';
