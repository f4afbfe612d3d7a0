"""The CI regression check (`bench check`, `bench baseline`)."""
