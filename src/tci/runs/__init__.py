"""One-shot runs: a program in a fresh sandbox that ends when the program does, judged by a
verdict (RL scoring). Models and verdicts, the runner that starts them, and SandboxFusion's
API over the same runner."""
