"""The reference application's web layer: its HTML pages, the operator panel, the offline
API docs and the security headers every response carries."""
