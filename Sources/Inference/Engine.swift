// The Gemma 3 engine lands here (issue 5).
