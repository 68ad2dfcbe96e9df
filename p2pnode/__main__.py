from p2pnode.cli import main

main()
