//! `lethe-policy`: pure decay and budget decisions. Time is always a parameter.
