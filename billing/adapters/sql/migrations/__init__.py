"""Alembic migrations of the billing schema (a package so that wheels ship them)."""
