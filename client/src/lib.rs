//! pond-client (being built).
