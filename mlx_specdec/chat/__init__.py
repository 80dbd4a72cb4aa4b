"""The terminal chat: `session` (a conversation: history, settings, prompt cache, slash commands;
no terminal code), `view` (the Rich live view) and `terminal` (the live and piped front ends)."""
