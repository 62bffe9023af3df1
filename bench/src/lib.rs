//! pond-bench (being built).
