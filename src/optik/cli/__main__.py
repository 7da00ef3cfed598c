from optik.cli import main

main()
