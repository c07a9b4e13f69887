"""PatentFlow: the `patentflow` command line and project-wide settings."""
