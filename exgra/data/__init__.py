"""Records, conversation templates, datasets and collators, caption extension, downloads, demo data."""
