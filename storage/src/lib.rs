//! pond-storage (being built).
