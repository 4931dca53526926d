"""Pure functions that build the children of kubetune resources as plain dicts."""
