//! Tables written by native actions: drafts, the outbox, meetings, research/enrichment jobs and undo entries.
