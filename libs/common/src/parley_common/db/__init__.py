"""Database access: engines, the declarative base conventions, migrations per service schema."""
