//! The guest-physical map: ranges, pages and physical access handlers.
