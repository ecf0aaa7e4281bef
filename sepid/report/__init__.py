"""Results for people: markdown tables and PNG figures."""
