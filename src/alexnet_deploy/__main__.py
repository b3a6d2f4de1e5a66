"""`python -m alexnet_deploy` runs the command-line interface."""

from alexnet_deploy.cli import main

if __name__ == "__main__":
    main()
