"""campaigns/: marketing that acts on its own: triggers on behaviour and items, delayed and scheduled campaigns, the outbox."""
