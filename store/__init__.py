"""The store: schema, engine, keys, image cache and migration glue. Imports neither app nor worker."""
