//! Image references: Docker's grammar and normalisation.
