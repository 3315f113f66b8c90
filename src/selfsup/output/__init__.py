"""What a person looks at: plots and the self-contained HTML report."""
