"""The foundations every layer uses: errors, logging, settings, prompt templates, turn events and state, safe HTTP fetching."""
