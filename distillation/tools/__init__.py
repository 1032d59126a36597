"""Around the core, not part of it: the offline demo and its asset fetching, the teacher-vs-student
report, and the benchmark against the hand-written Trainer recipe."""
