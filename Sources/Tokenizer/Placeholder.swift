// The Gemma 3 tokenizer: see Tokenizer.swift.
