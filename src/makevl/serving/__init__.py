"""makevl.serving"""
