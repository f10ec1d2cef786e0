"""One router per resource: search, items, clicks, health and stats."""
