"""The pack's own small default model: training scripts, export, evaluation."""
