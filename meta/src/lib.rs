//! pond-meta (being built).
