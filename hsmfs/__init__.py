"""hsm-mount: a simfs tree mounted with FUSE, released files restored when read."""
