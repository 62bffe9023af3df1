//! pond-tests (being built).
