//! pond-fuse (being built).
