-- The roles and default privileges a fresh Supabase project has, so the local PostgreSQL behind
-- PostgREST answers like Supabase (RLS, anon vs service_role, permission errors).
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
-- PostgREST logs in as authenticator and switches to the role named in the request's JWT.
create role authenticator login noinherit;
grant anon, authenticated, service_role to authenticator;

grant usage on schema public to anon, authenticated, service_role;
-- Supabase grants every new public table, sequence and function to the API roles; RLS and
-- explicit revokes are what keep data private there.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
