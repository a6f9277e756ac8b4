//! Placeholder; tests land here.
