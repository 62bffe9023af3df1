//! pond-compute (being built).
