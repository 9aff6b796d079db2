"""The Dash app: reads the results store and calls the same public API a notebook calls (Dash issue)."""
