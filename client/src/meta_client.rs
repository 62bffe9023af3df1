//! Metadata client (being built).
