"""Lightning callbacks: norm schedules and training diagnostics."""
