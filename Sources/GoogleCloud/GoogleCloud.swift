// Google Cloud clients land here (issue 7).
