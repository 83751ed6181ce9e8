//! # shoal-engine
