package subjects

// Subject matching, checked in tests against the NATS server's.
var (
	SubjectCovers   = subjectCovers
	SubjectsCollide = subjectsCollide
)
var SrvSubs = srvSubs
