//! The nested host VM ("L1").
