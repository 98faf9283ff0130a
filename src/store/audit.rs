//! Audit records of native actions (DESIGN §9).
