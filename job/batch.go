package job

// BatchItem is the answer for one job of a batch submit (POST
// /v1/jobs:batch), in the job's place: queued (ID, Queue, Status
// "queued"), a duplicate (ID of the earlier job of the same idempotency
// key, Duplicate), or refused (Error, Field, and Code, the status a
// POST /v1/jobs of that job alone would have got).
type BatchItem struct {
	ID        string `json:"id,omitempty"`
	Queue     string `json:"queue,omitempty"`
	Status    Status `json:"status,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Error     string `json:"error,omitempty"`
	Field     string `json:"field,omitempty"`
	Code      int    `json:"code,omitempty"`
}

// BatchResult is the body of a 200 to POST /v1/jobs:batch.
type BatchResult struct {
	// Jobs holds one item per job submitted, in order.
	Jobs       []BatchItem `json:"jobs"`
	Queued     int         `json:"queued"`
	Duplicates int         `json:"duplicates"`
	Failed     int         `json:"failed"`
}
