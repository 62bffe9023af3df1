//! Data-plane transport (being built).
