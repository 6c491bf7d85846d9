//! pgrepl
