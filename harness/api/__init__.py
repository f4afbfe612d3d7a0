"""The plugin API: hook specifications, typed specs, registries, the plugin manager, errors."""
