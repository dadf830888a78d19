"""makevl.training"""
