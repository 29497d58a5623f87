"""tenantkit: multi-tenant SaaS middleware for Flask and Starlette."""
