// The reviewers console (being written).
