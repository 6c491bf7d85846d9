//! pgtest
